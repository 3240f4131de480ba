"""The API's token authentication (a separate module: DRF imports it while loading its views)."""

import knox.auth
from django.utils import timezone


class TokenAuthentication(knox.auth.TokenAuthentication):
    """Knox token authentication that checks only the presented token's expiry.

    Knox also scans every token of the user on each request to delete the expired ones; that is a
    query per request on the hot claim path, so expired tokens are purged by the periodic
    ``core.purge_expired_tokens`` job instead (an expired token is refused either way).
    """

    def _cleanup_token(self, auth_token) -> bool:
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            auth_token.delete()
            return True
        return False

