"""The Django project of the WSGI tests, in one package: settings, views, urls, and the WSGI
application (`djangoapp.wsgi:application`, as `django-admin startproject` makes it)."""
