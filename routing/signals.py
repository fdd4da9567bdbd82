from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from routing.models import RoutingRule, Topic
from routing.services import bump_rules_version


@receiver(post_save, sender=RoutingRule)
@receiver(post_delete, sender=RoutingRule)
@receiver(post_save, sender=Topic)
@receiver(post_delete, sender=Topic)
@receiver(m2m_changed, sender=RoutingRule.destinations.through)
def _rules_changed(**_: Any) -> None:
    bump_rules_version()
