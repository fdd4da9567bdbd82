from django.db import migrations


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    from routing.seed import seed_default_routing

    seed_default_routing(apps.get_model("routing", "Topic"), apps.get_model("routing", "RoutingRule"))


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
