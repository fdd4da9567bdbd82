from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime
from rest_framework_api_key.models import APIKey


class Command(BaseCommand):
    help = "Create an API key for a producer and print it once (only its hash is stored)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="The producer's name; it travels with its events as the `source` header.")
        parser.add_argument("--expires", help="Optional expiry, ISO 8601 (e.g. 2027-01-01T00:00:00Z).")

    def handle(self, *args: Any, name: str, expires: str | None, **options: Any) -> None:
        name = name.strip()
        if not name or len(name) > 50:
            raise CommandError("NAME must be 1 to 50 characters.")
        expiry = None
        if expires:
            expiry = parse_datetime(expires)
            if expiry is None or expiry.tzinfo is None:
                raise CommandError(f"--expires {expires!r} is not an ISO 8601 timestamp with a UTC offset.")
        _, key = APIKey.objects.create_key(name=name, expiry_date=expiry)
        self.stdout.write(key)
