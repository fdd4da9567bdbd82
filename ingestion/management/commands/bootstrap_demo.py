import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework_api_key.models import APIKey


class Command(BaseCommand):
    help = (
        "Create (or reset) the demo superuser and a new demo API key, and print both. "
        "DEMO_ADMIN_USERNAME / DEMO_ADMIN_PASSWORD set them; otherwise the password is generated."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        username = os.environ.get("DEMO_ADMIN_USERNAME", "admin")
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True, "email": ""}
        )
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        _, api_key = APIKey.objects.create_key(name=f"demo-{secrets.token_hex(3)}")
        self.stdout.write("")
        self.stdout.write(f"Demo admin user ({'created' if created else 'password reset'}):")
        self.stdout.write("  URL:      http://127.0.0.1:8083/admin/")
        self.stdout.write(f"  username: {username}")
        self.stdout.write(f"  password: {password}")
        self.stdout.write("Demo API key (shown once; revoke it in the admin under API keys):")
        self.stdout.write(f"  {api_key}")
        self.stdout.write(
            "  curl -X POST http://127.0.0.1:8083/api/v1/events -H 'Content-Type: application/json' "
            f"-H 'Authorization: Api-Key {api_key}' -d @- <<< "
            '\'{"event_type":"activity","user_id":"u1","occurred_at":"2026-01-01T00:00:00Z","activity_type":"demo"}\''
        )
        self.stdout.write("")
