from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("json", views.as_json),
    path("form", views.form),
    path("upload", views.upload),
    path("cookie", views.cookie),
    path("session", views.session),
    path("go", views.go),
    path("stream", views.stream),
    path("boom", views.boom),
    path("async", views.async_view),
]
