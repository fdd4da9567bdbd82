"""The "Routing editors" group: add/change/delete/view on topics and routing rules, view on their history.

Other staff need only the view permissions to see (not change) rules; grant them per user or group."""

from django.db import migrations


def create_group(apps, schema_editor):  # type: ignore[no-untyped-def]
    from routing.services import ensure_routing_editors_group

    ensure_routing_editors_group(apps)


def remove_group(apps, schema_editor):  # type: ignore[no-untyped-def]
    from routing.services import ROUTING_EDITORS_GROUP

    apps.get_model("auth", "Group").objects.filter(name=ROUTING_EDITORS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0002_seed_default_routing"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
