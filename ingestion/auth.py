"""`Authorization: Api-Key <key>` authentication for producers, with a short in-process cache so the hot
path does not query the database on every request. A revoked or expired key stops working within
KEY_CACHE_SECONDS."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework_api_key.models import APIKey

KEY_CACHE_SECONDS = 5.0
_cache: dict[str, tuple[float, Client | None]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Client:
    """The producer behind a request: its key's id and name (the name travels as the `source` header)."""

    key_id: str
    name: str
    is_authenticated: bool = True


def _lookup(raw_key: str) -> Client | None:
    try:
        api_key = APIKey.objects.get_from_key(raw_key)
    except APIKey.DoesNotExist:
        return None
    if api_key.revoked or (api_key.expiry_date is not None and api_key.expiry_date < timezone.now()):
        return None
    return Client(key_id=str(api_key.pk), name=api_key.name)


def client_for_key(raw_key: str) -> Client | None:
    now = time.monotonic()
    hit = _cache.get(raw_key)
    if hit is not None and hit[0] > now:
        return hit[1]
    client = _lookup(raw_key)
    with _lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[raw_key] = (now + KEY_CACHE_SECONDS, client)
    return client


def clear_key_cache() -> None:
    with _lock:
        _cache.clear()


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[Client, str] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            raise exceptions.NotAuthenticated("Missing Authorization header: use 'Authorization: Api-Key <key>'.")
        scheme, _, raw_key = header.partition(" ")
        raw_key = raw_key.strip()
        if scheme != self.keyword or not raw_key:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Authorization: Api-Key <key>'.")
        client = client_for_key(raw_key)
        if client is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        return client, raw_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def client_of(request: Any) -> Client:
    user = request.user
    assert isinstance(user, Client)
    return user
