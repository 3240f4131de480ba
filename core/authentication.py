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

from pgsql import rows


class TokenAuthentication(knox.auth.TokenAuthentication):
    """Knox token authentication that checks only the presented token's expiry.

    Knox also scans every token of the user on each request to delete the expired ones; that is a
    query per request on the hot claim path, so expired tokens are purged by the periodic
    ``core.purge_expired_tokens`` job instead (an expired token is refused either way).

    The token and its user are read with one plain SQL statement (the ORM's
    building of knox's query cost more than the query; bench/claims.py); the checks are knox's.
    Nothing is cached: a revoked token or a deactivated user is refused on the next request.
    """

    def authenticate_credentials(self, token):
        if knox_settings.AUTO_REFRESH:  # knox's own path refreshes the expiry it reads
            return super().authenticate_credentials(token)
        msg = _("Invalid token.")
        token = token.decode("utf-8")
        token_model, user_model = get_token_model(), get_user_model()
        selected = [*rows.columns(token_model, "k"), *rows.columns(user_model, "u")]
        with connection.cursor() as cursor:
            cursor.execute(f"""SELECT {", ".join(selected)} FROM {token_model._meta.db_table} k
                               JOIN {user_model._meta.db_table} u
                                 ON u.{user_model._meta.pk.column} = k.{token_model._meta.get_field("user").column}
                               WHERE k.token_key = %s""", [token[:CONSTANTS.TOKEN_KEY_LENGTH]])
            found = cursor.fetchall()
        for row in found:
            auth_token, user = rows.instances((token_model, user_model), row)
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
