from django.urls import URLPattern, URLResolver, path

from routing.views import RoutingTestView

urlpatterns: list[URLPattern | URLResolver] = [
    path("test", RoutingTestView.as_view(), name="routing-test"),
]
