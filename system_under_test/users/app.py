"""Users service: register, read, profile, login (sessions in Redis), and the
seed's API-composition dashboard (users + orders + payments over HTTP).

Store: PostgreSQL `user_service_db` (seed §4.1 `users`, `user_profiles`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
from typing import Annotated
from uuid import UUID

import psycopg
from fastapi import Path, Query, Response
from pydantic import AfterValidator, Field
from psycopg.types.json import Jsonb

from ..common.app import JSON, Service
from ..common.contract import errors
from ..common.errors import Conflict, NotFound, Unauthorized, Unavailable
from ..common.peers import PeerError
from ..common.types import JsonObject, Model, text

service = Service("users", peers=("orders", "payments"),
                  description="Users, profiles, sessions and the /dashboard composition")
app = service.app

SESSION_TTL_S = 1800
# scrypt cost lowered from the usual 2**14 (38 ms here) to 2**11 (4 ms) so a
# load test measures the databases rather than the KDF; raise it in production.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 11, 8, 1
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}$")


def _email(v: str) -> str:
    if not _EMAIL.match(v):
        raise ValueError("not an email address")
    return v.lower()


# The schema carries the handler's own pattern (email-validator is not a dependency).
Email = Annotated[text(255, 3), AfterValidator(_email),
                  Field(json_schema_extra={"format": "email", "pattern": _EMAIL.pattern})]


class RegisterUser(Model):
    email: Email
    password: text(128, 8)
    first_name: text(100) | None = None
    last_name: text(100) | None = None


class Login(Model):
    email: Email
    password: text(128, 1)


class ProfileUpdate(Model):
    avatar_url: text(500) | None = None
    preferences: JsonObject | None = None


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${h.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, h = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), h)


_USER_COLS = ("u.id, u.email, u.first_name, u.last_name, u.created_at, u.updated_at, u.is_active, "
              "p.avatar_url, p.preferences, p.last_login")


def _user_json(row: dict) -> dict:
    return {
        "id": row["id"], "email": row["email"], "first_name": row["first_name"],
        "last_name": row["last_name"], "created_at": row["created_at"],
        "updated_at": row["updated_at"], "is_active": row["is_active"],
        "profile": {"avatar_url": row["avatar_url"], "preferences": row["preferences"],
                    "last_login": row["last_login"]},
    }


UserId = Annotated[UUID, Path(description="user id")]


@app.post("/users", status_code=201, tags=["users"], responses=errors(409))
async def register(body: RegisterUser):
    pw_hash = await asyncio.to_thread(hash_password, body.password)
    try:
        async with service.db.transaction("insert_user") as conn:
            cur = await conn.execute(
                "INSERT INTO users (email, password_hash, first_name, last_name) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (body.email, pw_hash, body.first_name, body.last_name))
            uid = (await cur.fetchone())["id"]
            await conn.execute("INSERT INTO user_profiles (user_id, preferences) VALUES (%s, %s)",
                               (uid, Jsonb({})))
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"email {body.email!r} is already registered", field="email") from None
    return await get_user(uid)


@app.get("/users/{user_id}", tags=["users"])
async def get_user(user_id: UserId):
    row = await service.db.fetchone(
        "get_user", f"SELECT {_USER_COLS} FROM users u LEFT JOIN user_profiles p "
        "ON p.user_id = u.id WHERE u.id = %s", (user_id,))
    if row is None:
        raise NotFound(f"user {user_id} does not exist", field="user_id")
    return _user_json(row)


@app.get("/admin/users", tags=["admin"])
async def list_users(limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                     offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """Every user's id and email, for checkers comparing CDC copies with the source."""
    rows = await service.db.fetchall(
        "list_users", "SELECT id, email FROM users ORDER BY id LIMIT %s OFFSET %s", (limit, offset))
    return {"items": rows, "limit": limit, "offset": offset}


@app.put("/users/{user_id}/profile", tags=["users"])
async def update_profile(user_id: UserId, body: ProfileUpdate):
    async with service.db.transaction("update_profile") as conn:
        cur = await conn.execute("UPDATE users SET updated_at = now() WHERE id = %s RETURNING id",
                                 (user_id,))
        if await cur.fetchone() is None:
            raise NotFound(f"user {user_id} does not exist", field="user_id")
        await conn.execute(
            "INSERT INTO user_profiles (user_id, avatar_url, preferences) VALUES (%s, %s, %s) "
            "ON CONFLICT (user_id) DO UPDATE SET "
            "avatar_url = COALESCE(EXCLUDED.avatar_url, user_profiles.avatar_url), "
            "preferences = COALESCE(EXCLUDED.preferences, user_profiles.preferences)",
            (user_id, body.avatar_url, Jsonb(body.preferences) if body.preferences is not None else None))
    return await get_user(user_id)


def _session_key(token: str) -> str:
    return f"users:session:{token}"


@app.post("/sessions", status_code=201, tags=["sessions"], responses=errors(401))
async def login(body: Login):
    row = await service.db.fetchone(
        "get_user_by_email", "SELECT id, password_hash, is_active FROM users WHERE email = %s",
        (body.email,))
    ok = row is not None and row["is_active"] and \
        await asyncio.to_thread(verify_password, body.password, row["password_hash"])
    if not ok:
        raise Unauthorized("email or password is wrong", field="password")
    token = secrets.token_urlsafe(24)
    try:
        await service.redis.set(_session_key(token), str(row["id"]), ex=SESSION_TTL_S)
    except Exception as e:  # redis errors of any kind: the session store is down
        raise Unavailable(f"session store unavailable: {type(e).__name__}") from None
    await service.db.execute("touch_last_login",
                             "UPDATE user_profiles SET last_login = now() WHERE user_id = %s",
                             (row["id"],))
    return {"token": token, "user_id": row["id"], "expires_in": SESSION_TTL_S}


Token = Annotated[str, Path(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@app.get("/sessions/{token}", tags=["sessions"])
async def get_session(token: Token):
    try:
        uid = await service.redis.get(_session_key(token))
    except Exception as e:  # redis errors of any kind
        raise Unavailable(f"session store unavailable: {type(e).__name__}") from None
    if uid is None:
        raise NotFound("session does not exist or has expired", field="token")
    return {"token": token, "user_id": uid.decode()}


@app.delete("/sessions/{token}", status_code=204, tags=["sessions"])
async def logout(token: Token):
    try:
        await service.redis.delete(_session_key(token))
    except Exception as e:  # redis errors of any kind
        raise Unavailable(f"session store unavailable: {type(e).__name__}") from None
    return Response(status_code=204)


@app.get("/dashboard/{user_id}", tags=["composition"])
async def dashboard(user_id: UserId):
    """Seed API合成パターン: user + orders + payments, fetched concurrently.

    A peer that fails leaves its part null and is listed in `partial`: the
    dashboard degrades rather than failing as a whole.
    """
    user = await get_user(user_id)
    results = await asyncio.gather(
        service.peers["orders"].request("GET", f"/users/{user_id}/orders", params={"limit": 10}),
        service.peers["payments"].request("GET", f"/users/{user_id}/payments", params={"limit": 10}),
        return_exceptions=True)
    body = {"user": user, "orders": None, "payments": None, "partial": []}
    for key, res in zip(("orders", "payments"), results):
        if isinstance(res, PeerError):
            body["partial"].append({"part": key, "error": str(res)[:200]})
        elif isinstance(res, BaseException):
            raise res
        else:
            body[key] = res
    return JSON(body)
