"""Password hashing (argon2id) and the password policy.

Parameters follow the OWASP Password Storage Cheat Sheet's first argon2id option: m = 19 MiB,
t = 2 iterations, p = 1 lane (about 25-40 ms per hash on one core of a 2-core machine; see
BENCHMARKS.md). Stored hashes carry their parameters, so raising the cost later re-hashes
passwords transparently on the next successful login (`needs_rehash`).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from shared.errors import ValidationFailed

if TYPE_CHECKING:
    from argon2 import PasswordHasher

MEMORY_KIB = 19 * 1024
ITERATIONS = 2
PARALLELISM = 1
MIN_LENGTH = 10
MAX_LENGTH = 128  # bounds hashing work per request
# The most common passwords of breach corpora that meet the length rule; a real deployment can
# extend this from a breach list without code changes to the rule itself.
COMMON = frozenset({
    "password123", "1234567890", "qwertyuiop", "password1234", "iloveyou123", "123456789a",
    "qwerty1234", "1q2w3e4r5t", "abcdefghij", "passw0rd123", "letmein123", "welcome123",
    "0987654321", "1111111111", "aaaaaaaaaa", "administrator", "changeme123", "trustno1234",
})


@cache
def hasher() -> PasswordHasher:
    from argon2 import PasswordHasher, Type

    return PasswordHasher(time_cost=ITERATIONS, memory_cost=MEMORY_KIB, parallelism=PARALLELISM,
                          hash_len=32, salt_len=16, type=Type.ID)


def check_policy(password: str, email: str = "", display_name: str = "") -> None:
    """NIST SP 800-63B style: length, not a known-common password, not the account's own name."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        problems.append(f"must have at most {MAX_LENGTH} characters")
    lowered = password.lower()
    if lowered in COMMON or len(set(lowered)) <= 2:
        problems.append("is too common")
    local_part = email.split("@", 1)[0].lower()
    if (local_part and len(local_part) >= 4 and local_part in lowered) or (
            display_name and lowered == display_name.lower()):
        problems.append("must not contain your email or name")
    if problems:
        raise ValidationFailed("password does not meet the policy", code="weak_password",
                               errors=[{"field": "password", "message": m} for m in problems])


def hash_password(password: str) -> str:
    return hasher().hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(hasher().verify(stored_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return bool(hasher().check_needs_rehash(stored_hash))


@cache
def dummy_hash() -> str:
    """A hash to verify against when the account does not exist, so an unknown email costs the
    same time as a wrong password and the two cannot be told apart."""
    return hash_password("not-a-real-password-0f3c")
