"""The "DLQ operators" group: may view, edit (change), replay and discard dead letters, nothing else."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "DLQ operators"
PERMISSIONS = ["view_deadletter", "change_deadletter", "replay_deadletter", "discard_deadletter"]


def create_group(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Permissions are normally created after all migrations ran; make sure ours exist now.
    # (Tests call this with the live app registry after a flush, so restore what was there.)
    app_config = apps.get_app_config("publisher")
    models_module = getattr(app_config, "models_module", None)
    app_config.models_module = models_module or True
    try:
        create_permissions(app_config, apps=apps, verbosity=0)
    finally:
        app_config.models_module = models_module

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="publisher", codename__in=PERMISSIONS)
    )


def remove_group(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("publisher", "0002_dead_letter_operations"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
