"""The API's token authentication (a separate module: DRF imports it while loading its views)."""

import binascii
from hmac import compare_digest

import knox.auth
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from knox.crypto import hash_token
from knox.models import get_token_model
from knox.settings import CONSTANTS, knox_settings
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header

from pgsql import rows

# DRF loads this module once the app registry is ready (knox.models above needs it too), so the
# tables and columns are read from the models once, here; the statement is the same text every call.
_TOKEN_MODEL, _USER_MODEL = get_token_model(), get_user_model()
TOKEN_AND_USER_SQL = f"""
    SELECT {", ".join([*rows.columns(_TOKEN_MODEL, "k"), *rows.columns(_USER_MODEL, "u")])}
      FROM {_TOKEN_MODEL._meta.db_table} k
      JOIN {_USER_MODEL._meta.db_table} u
        ON u.{_USER_MODEL._meta.pk.column} = k.{_TOKEN_MODEL._meta.get_field("user").column}
     WHERE k.token_key = %(token_key)s"""

# "Token" is knox's scheme; "Bearer" (RFC 6750) is what OHIF v3 sends for a ?token= in its URL and
# what most DICOMweb clients send. The credential is the same knox token either way.
SCHEMES = (b"token", b"bearer")


class TokenAuthentication(knox.auth.TokenAuthentication):
    """Knox token authentication, under the ``Token`` or ``Bearer`` scheme, that checks only the
    presented token's expiry.

    Knox also scans every token of the user on each request to delete the expired ones; that is a
    query per request on the hot claim path, so expired tokens are purged by the periodic
    ``core.purge_expired_tokens`` job instead (an expired token is refused either way).

    The token and its user are read with one plain SQL statement (the ORM's
    building of knox's query cost more than the query; bench/claims.py); the checks are knox's.
    Nothing is cached: a revoked token or a deactivated user is refused on the next request.
    """

    def authenticate(self, request):
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in SCHEMES:
            return None  # no header, or one for another backend
        if len(auth) == 1:
            raise exceptions.AuthenticationFailed(_("Invalid token header. No credentials provided."))
        if len(auth) > 2:
            raise exceptions.AuthenticationFailed(_("Invalid token header. Token string should not contain spaces."))
        return self.authenticate_credentials(auth[1])

    def authenticate_credentials(self, token):
        if knox_settings.AUTO_REFRESH:  # knox's own path refreshes the expiry it reads
            return super().authenticate_credentials(token)
        msg = _("Invalid token.")
        token = token.decode("utf-8")
        with connection.cursor() as cursor:
            cursor.execute(TOKEN_AND_USER_SQL, {"token_key": token[:CONSTANTS.TOKEN_KEY_LENGTH]})
            found = cursor.fetchall()
        for row in found:
            auth_token, user = rows.instances((_TOKEN_MODEL, _USER_MODEL), row)
            auth_token.user = user
            if self._cleanup_token(auth_token):
                continue
            try:
                digest = hash_token(token)
            except (TypeError, binascii.Error):
                raise exceptions.AuthenticationFailed(msg) from None
            if compare_digest(digest, auth_token.digest):
                return self.validate_user(auth_token)
        raise exceptions.AuthenticationFailed(msg)

    def _cleanup_token(self, auth_token) -> bool:
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            auth_token.delete()
            return True
        return False
