"""API tokens and roles.

A token is shown once; the state database keeps only its SHA-256. A request
is authenticated by looking that hash up, so the token itself is never
compared character by character, stored or logged.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crmsync.state.store import StateStore, utcnow

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")
PREFIX = "csk_"
NAME_RE = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def default_name(role: str) -> str:
    return f"{role}-{secrets.token_hex(3)}"


def create_token(
    state: StateStore, role: Role, name: str | None = None, *, actor: str = "cli"
) -> str:
    """Make a token, store its hash (audited), and return the token: shown once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    name = name or default_name(role)
    if not NAME_RE.match(name):
        raise ValueError(f"token name must match {NAME_RE.pattern}, got {name!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    with state.begin() as c:
        if state.active_token_named(c, name):
            raise ValueError(f"a token named {name!r} exists already (revoke it first)")
        state.add_token(c, name, role, hash_token(token), now=now)
        state.add_audit(c, actor, "token.create", f"token:{name}", {"role": role}, now=now)
    return token


def revoke_token(state: StateStore, name: str, *, actor: str = "cli") -> int:
    with state.begin() as c:
        n = state.revoke_token(c, name, now=utcnow())
        if n:
            state.add_audit(c, actor, "token.revoke", f"token:{name}")
    return n


def verify(state: StateStore, token: str) -> Principal | None:
    if not token or len(token) > 512:
        return None
    row = state.token_by_hash(hash_token(token))
    if row is None or row["role"] not in ROLES:
        return None
    return Principal(row["name"], row["role"])


# -- FastAPI dependencies ------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="an API token: crmsync token create")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def require_viewer(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Any valid token (viewer or admin)."""
    if creds is None:
        raise _unauthorized("missing bearer token")
    principal = verify(request.app.state.ctx.state, creds.credentials)
    if principal is None:
        raise _unauthorized("invalid or revoked token")
    return principal


def require_admin(principal: Annotated[Principal, Depends(require_viewer)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this action needs an admin token")
    return principal


Viewer = Annotated[Principal, Depends(require_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]
