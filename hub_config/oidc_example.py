"""Log in through an OpenID Connect provider (Keycloak, Okta, Entra ID, Dex, ...) instead of the
shared password of `gpuhub up`. The provider's groups become JupyterHub groups at every login,
and the catalog's teams name those groups (`groups` for members, `leads.groups` for leads).

    gpuhub up --jupyterhub-config hub_config/oidc_example.py

or, with a JupyterHub config of your own, `load_subconfig("oidc_example.py")` after it. Settings
come from environment variables, so that the client secret stays out of files:

    GPUHUB_OIDC_ISSUER          the provider's issuer URL, e.g. http://127.0.0.1:5556/dex (required)
    GPUHUB_OIDC_CLIENT_ID       this hub's client at the provider (required)
    GPUHUB_OIDC_CLIENT_SECRET   its secret (required)
    GPUHUB_OIDC_AUTHORIZE_URL   default ISSUER/auth
    GPUHUB_OIDC_TOKEN_URL       default ISSUER/token
    GPUHUB_OIDC_USERINFO_URL    default ISSUER/userinfo
                                (Dex's paths; Keycloak, Okta and Entra ID differ: see the how-to,
                                or ISSUER/.well-known/openid-configuration at the provider)
    GPUHUB_OIDC_CALLBACK_URL    the redirect URI registered at the provider, e.g.
                                https://hub.example.org/hub/oauth_callback
                                (default: made from the URL the browser used)
    GPUHUB_OIDC_SCOPES          default "openid profile email groups"
    GPUHUB_OIDC_USERNAME_CLAIM  default preferred_username
    GPUHUB_OIDC_GROUPS_CLAIM    default groups
    GPUHUB_OIDC_GROUPS_FROM_ID_TOKEN  1: read the claims from the ID token instead of the userinfo
                                endpoint (Entra ID puts groups in the ID token only)
    GPUHUB_OIDC_ALLOWED_GROUPS  comma-separated groups whose members may log in; default: every
                                group the catalog's teams name, members and leads, plus the admin
                                groups. "*": anyone the provider authenticates.
    GPUHUB_OIDC_ADMIN_GROUPS    comma-separated groups whose members are JupyterHub admins
    GPUHUB_OIDC_LOGIN_SERVICE   the name on the login button, default "your organisation"

Users the catalog names (`users`, `leads.users`) may log in too, whatever their groups. The
allowed groups are read from the catalog when the hub starts: restart it after adding a team's
group, or list the groups in GPUHUB_OIDC_ALLOWED_GROUPS. Guide:
docs/how-to/log-in-with-an-identity-provider.md (also GitHub teams, with GitHubOAuthenticator).
"""

import os

from spawner_ext.catalog import load_catalog
from spawner_ext.service.registration import ACCESS_SCOPE, READ_SCOPE

c = get_config()  # noqa: F821


def _setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, "").strip() or default
    if value is None:
        raise ValueError(
            f"{__file__}: set {name} (see this file's docstring, or "
            "docs/how-to/log-in-with-an-identity-provider.md)"
        )
    return value


def _names(text: str) -> set[str]:
    return {name.strip() for name in text.split(",") if name.strip()}


issuer = _setting("GPUHUB_OIDC_ISSUER").rstrip("/")
admin_groups = _names(_setting("GPUHUB_OIDC_ADMIN_GROUPS", ""))
allowed_groups = _setting("GPUHUB_OIDC_ALLOWED_GROUPS", "")

c.JupyterHub.authenticator_class = "generic-oauth"
auth = c.GenericOAuthenticator
auth.client_id = _setting("GPUHUB_OIDC_CLIENT_ID")
auth.client_secret = _setting("GPUHUB_OIDC_CLIENT_SECRET")
auth.authorize_url = _setting("GPUHUB_OIDC_AUTHORIZE_URL", f"{issuer}/auth")
auth.token_url = _setting("GPUHUB_OIDC_TOKEN_URL", f"{issuer}/token")
if _setting("GPUHUB_OIDC_GROUPS_FROM_ID_TOKEN", "") == "1":
    auth.userdata_from_id_token = True
else:
    auth.userdata_url = _setting("GPUHUB_OIDC_USERINFO_URL", f"{issuer}/userinfo")
if os.environ.get("GPUHUB_OIDC_CALLBACK_URL"):
    auth.oauth_callback_url = os.environ["GPUHUB_OIDC_CALLBACK_URL"]
auth.scope = _setting("GPUHUB_OIDC_SCOPES", "openid profile email groups").split()
auth.username_claim = _setting("GPUHUB_OIDC_USERNAME_CLAIM", "preferred_username")
auth.login_service = _setting("GPUHUB_OIDC_LOGIN_SERVICE", "your organisation")
auth.enable_pkce = True  # the default since OAuthenticator 16.3; said here because we rely on it

# The provider's groups replace the user's JupyterHub groups at every login: leaving a group at
# the provider loses its team at the next login.
auth.manage_groups = True
auth.auth_state_groups_key = f"oauth_user.{_setting('GPUHUB_OIDC_GROUPS_CLAIM', 'groups')}"
# Admin status follows the admin groups at every login too (when any are set).
auth.admin_groups = admin_groups

if allowed_groups == "*":
    auth.allow_all = True
elif allowed_groups:
    auth.allowed_groups = _names(allowed_groups) | admin_groups
else:
    # gpuhub up passes the catalog's path as GPUHUB_CATALOG.
    catalog = load_catalog(_setting("GPUHUB_CATALOG"))
    teams = catalog.teams.values()
    auth.allowed_groups = {g for t in teams for g in (*t.groups, *t.leads.groups)} | admin_groups
    auth.allowed_users = {u for t in teams for u in (*t.users, *t.leads.users)}
# Members of the admin groups read every team's usage reports, as gpuhub up's "admin" does.
if admin_groups:
    c.JupyterHub.load_roles.append(
        {
            "name": "gpu-usage-admin-groups",
            "description": "Read every team's GPU usage reports and the catalog's status",
            "scopes": [READ_SCOPE, ACCESS_SCOPE],
            "groups": sorted(admin_groups),
        }
    )
auth.custom_403_message = (
    "You logged in at the identity provider, but your account is in none of the groups that may "
    "use this hub. Ask your team lead to add you to your team's group there, then log in again."
)
