"""Logger presets: wandb that stays offline unless the user is logged in."""

import netrc
import os
from typing import Any, Optional
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_logged_in() -> bool:
    """True when wandb has credentials: WANDB_API_KEY, or a netrc entry written by `wandb login`."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, offline by default: online only when logged in (or ``offline: false``).

    ``WANDB_MODE`` set in the environment still wins, as wandb documents.
    """

    def __init__(self, *, offline: Optional[bool] = None, **kwargs: Any) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE", "") != "online" and not wandb_logged_in()
        super().__init__(offline=offline, **kwargs)
