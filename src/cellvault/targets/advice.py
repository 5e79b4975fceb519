"""What an operator should do about a target's error: the fix ``doctor`` prints beside it."""

from __future__ import annotations

import re

from .base import Target

__all__ = ["target_fix"]

_CREDENTIALS = re.compile(
    r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\b403\b|"
    r"auth(entication|orization)? failed|@ERROR: auth|password|permission denied|credential",
    re.I,
)
_MISSING = re.compile(r"NoSuchBucket|does not exist|unknown module|No such file", re.I)
_UNREACHABLE = re.compile(
    r"Connection refused|refused|timed out|timeout|Could not connect|Name or service not known|"
    r"nodename nor servname|No route to host|Network is unreachable|no answer",
    re.I,
)


def target_fix(target: Target, error: str, hint: str | None) -> str:
    """What to do about *error* from *target*: credentials, reachability, a missing bucket, else *hint*."""
    scheme = target.spec.scheme
    if _CREDENTIALS.search(error):
        which = {
            "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or [targets.s3.options] key, secret)",
            "s3a": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            "oss": "OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET (or [targets.oss.options] key, secret)",
            "rsync": "RSYNC_PASSWORD and the module's 'auth users'",
            "rsync+ssh": "the ssh key and the user's rights on the NAS",
        }.get(scheme, "its credentials")
        return (
            f"the credentials of target {target.name} were refused or may not write there: "
            f"check {which}, and that they may read, write and delete under "
            f"{target.spec.display()}"
        )
    if _UNREACHABLE.search(error):
        return (
            f"check that {target.spec.display()} is reachable from this host: is the server up, "
            "the endpoint and port right, a firewall or proxy in the way?"
        )
    if _MISSING.search(error):
        return f"create {target.spec.display()} (bucket, module or folder) or fix the target's URL"
    return hint or (
        f"check that {target.spec.display()} is reachable from this host (network, firewall, "
        "endpoint) and writable"
    )
