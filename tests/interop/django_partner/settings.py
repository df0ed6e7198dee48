"""Django settings of a minimal django-pyas2 server used as the receiving partner in tests.

Everything it writes (the sqlite database, received payloads and MDNs) goes to the
directory named by AS2_DJANGO_DATA, a temporary directory the test owns.
"""

import os

DATA = os.environ["AS2_DJANGO_DATA"]

SECRET_KEY = "as2-gateway-interop-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "pyas2",
]
MIDDLEWARE = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(DATA, "db.sqlite3"),
        # partner.py serves one request at a time; the timeout covers the async MDN
        # command writing while a request is served.
        "OPTIONS": {"timeout": 30},
    }
}
MEDIA_ROOT = os.path.join(DATA, "media")
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024 * 1024
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# No PYAS2 DATA_DIR: django-pyas2 would join it as an absolute path, which Django's file
# storage refuses; received files go under MEDIA_ROOT instead.
PYAS2 = {
    "MDN_URL": os.environ.get("AS2_DJANGO_MDN_URL", "http://127.0.0.1:1/pyas2/as2receive"),
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
