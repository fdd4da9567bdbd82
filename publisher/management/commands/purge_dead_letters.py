"""Delete discarded (and optionally replayed) dead letters older than the retention period, in chunks.

python manage.py purge_dead_letters --older-than 30d [--include-replayed] [--dry-run]
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from publisher import replay


class Command(BaseCommand):
    help = "Delete discarded (and with --include-replayed, replayed) dead letters older than --older-than."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            default="",
            help="age such as 30d, 12h, 2w (default: the admin's retention setting, in days)",
        )
        parser.add_argument("--include-replayed", action="store_true", help="also delete replayed entries")
        parser.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
        parser.add_argument("--chunk-size", type=int, default=1000, help="rows per DELETE (default 1000)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["older_than"]:
                older_than = replay.parse_age(options["older_than"])
            else:
                older_than = replay.parse_age(f"{replay.settings_singleton().retention_days}d")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1")
        what = "discarded and replayed" if options["include_replayed"] else "discarded"

        def on_chunk(count: int) -> None:
            if options["verbosity"] >= 2:
                self.stdout.write(f"  deleted {count}")

        count = replay.purge(
            older_than=older_than,
            include_replayed=options["include_replayed"],
            dry_run=options["dry_run"],
            chunk_size=options["chunk_size"],
            on_chunk=on_chunk,
        )
        if options["dry_run"]:
            self.stdout.write(f"Dry run: would delete {count} {what} dead letters older than {older_than}.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Deleted {count} {what} dead letters older than {older_than}."))
