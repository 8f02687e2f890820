"""Bearer tokens: HS256 only, `exp` and `sub` required, aud/iss when configured, tenant rules."""

from __future__ import annotations

import base64
import json
import time
import warnings

import jwt
import pytest

from shared.errors import Unauthorized
from shared.settings import Settings
from shared.tokens import main, mint_token, verify_token

SECRET = "unit-test-secret-unit-test-secret-32"


def _settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, environment="test", jwt_secret=SECRET, **overrides)  # type: ignore[arg-type, call-arg]


def _token(claims: dict, *, key: str = SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short keys for HS512 in the refusal cases
        return jwt.encode(claims, key, algorithm=algorithm)


def _claims(**overrides: object) -> dict:
    claims: dict = {"sub": "svc", "tenant": "t-1", "scope": "jobs:read", "exp": int(time.time()) + 60}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_a_minted_token_verifies_to_its_principal():
    settings = _settings()
    principal = verify_token(
        mint_token(settings, subject="s", tenant_id="t-1", scopes=["jobs:read", "jobs:write"]), settings
    )
    assert (principal.subject, principal.tenant_id) == ("s", "t-1")
    assert principal.scopes == {"jobs:read", "jobs:write"} and not principal.is_admin
    admin = verify_token(mint_token(settings, subject="ops", tenant_id=None, scopes=["admin"]), settings)
    assert admin.is_admin and admin.tenant_id is None


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("expired", _token(_claims(exp=int(time.time()) - 5))),
        ("alg none", f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."),
        ("HS512", _token(_claims(), algorithm="HS512")),
        ("wrong key", _token(_claims(), key="some-other-secret-some-other-secret")),
        ("no exp", _token(_claims(exp=None))),
        ("no sub", _token(_claims(sub=None))),
        ("tenant-less non-admin", _token(_claims(tenant=None))),
        ("tenant with a slash", _token(_claims(tenant="a/b"))),
        ("empty tenant", _token(_claims(tenant=""))),
        ("scope as a list", _token(_claims(scope=["admin"]))),
        ("tenant as a number", _token(_claims(tenant=5))),
        ("not a JWT", "abc.def"),
    ],
    ids=lambda value: value if " " in value or len(value) < 24 else "",  # the name, not the time-stamped token
)
def test_bad_tokens_are_unauthorized(name: str, token: str):
    with pytest.raises(Unauthorized) as caught:
        verify_token(token, _settings())
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    if name == "expired":
        assert caught.value.detail == "token expired"


def test_audience_and_issuer_are_required_when_configured():
    settings = _settings(jwt_audience="cp", jwt_issuer="https://issuer.example")
    good = _token(_claims(aud="cp", iss="https://issuer.example"))
    assert verify_token(good, settings).tenant_id == "t-1"
    for claims in (_claims(), _claims(aud="cp"), _claims(aud="other", iss="https://issuer.example")):
        with pytest.raises(Unauthorized):
            verify_token(_token(claims), settings)
    # Minting for such a deployment includes both.
    assert verify_token(mint_token(settings, subject="s", tenant_id="t", scopes=["jobs:read"]), settings)


def test_the_cli_mints_a_token_and_refuses_tokens_that_could_not_work(monkeypatch, capsys):
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("ENVIRONMENT", "test")
    assert main(["--tenant", "t-2", "--scope", "jobs:read", "--ttl", "60"]) == 0
    principal = verify_token(capsys.readouterr().out.strip(), _settings())
    assert principal.tenant_id == "t-2" and principal.scopes == {"jobs:read"}
    for argv in (["--scope", "jobs:read"], ["--tenant", "t", "--scope", "superuser"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert main(["--scope", "admin"]) == 0  # a tenant-less admin token is fine
