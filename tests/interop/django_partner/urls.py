"""The partner's URLs: django-pyas2's receive endpoint at /pyas2/as2receive."""

from django.urls import include, path

urlpatterns = [path("pyas2/", include("pyas2.urls"))]
