"""Where an ngrok authtoken comes from, in the order users expect, without ever showing it.

1. the argument (``%webnet start --authtoken ...``, ``wm.start(authtoken=...)``);
2. the ``NGROK_AUTHTOKEN`` environment variable;
3. a Colab secret named ``NGROK_AUTHTOKEN`` (the key icon in Colab's left bar);
4. a Kaggle secret named ``NGROK_AUTHTOKEN`` (Add-ons > Secrets);
5. a hidden prompt, only when the tunnel was asked for by name (``--tunnel ngrok``).

The value lives in an :class:`Authtoken` whose ``repr`` and ``str`` name only its source,
so a traceback, a log line or a notebook's output cannot carry it.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass, field

NAME = "NGROK_AUTHTOKEN"
DASHBOARD = "https://dashboard.ngrok.com/get-started/your-authtoken"


@dataclass(frozen=True)
class Authtoken:
    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"the ngrok authtoken from {self.source}"


def hosted() -> str | None:
    """``"colab"`` or ``"kaggle"`` when the kernel runs there (a phone can reach it only by tunnel), else None."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return "kaggle"
    return None


def find_authtoken(explicit: str | None = None, *, prompt: bool = False) -> Authtoken | None:
    """The first authtoken found in the order above; None if there is none (and no prompt)."""
    if explicit and explicit.strip():
        return Authtoken(explicit.strip(), "the argument")
    if os.environ.get(NAME, "").strip():
        return Authtoken(os.environ[NAME].strip(), f"the {NAME} environment variable")
    for source, read in (("Colab's secret " + NAME, _colab_secret), ("Kaggle's secret " + NAME, _kaggle_secret)):
        value = read()
        if value:
            return Authtoken(value.strip(), source)
    if prompt:
        value = getpass.getpass(f"ngrok authtoken (from {DASHBOARD}; not shown, not stored): ")
        if value.strip():
            return Authtoken(value.strip(), "the prompt")
    return None


def _colab_secret() -> str | None:
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(userdata.get(NAME))
    except Exception:  # SecretNotFoundError, NotebookAccessError (access not granted): not found here
        return None


def _kaggle_secret() -> str | None:
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(UserSecretsClient().get_secret(NAME))
    except Exception:  # no such secret, or secrets not attached to this notebook
        return None
