"""Checks: the configuration file and the private key (its mode and owner; never its value)."""
from __future__ import annotations

import pwd
import stat
from pathlib import Path

from .. import config
from .context import Context
from .result import SERVICE_USER, Result, failed, passed, warned

def check_config(ctx: Context) -> Result:
    name = "config"
    if ctx.cfg_error is not None:
        return failed(name, ctx.cfg_error, "fix the file (see etc/config.example.toml); "
                      "soca-diag --only config checks it again")
    cfg = ctx.cfg
    where = ctx.config_source
    if not cfg.agent_id:
        return failed(name, f"{where}: agent_id is not set", "set agent_id in the config "
                      "file (or SOCA_AGENT_ID)")
    if cfg.agent_id == "your-agent-id":
        return failed(name, f"{where}: agent_id is still the example's 'your-agent-id'",
                      "set agent_id to your Soca AI agent's id")
    return passed(name, f"{where}: url {cfg.url}, agent {cfg.agent_id}, lang {cfg.lang}",
                  source=where, url=cfg.url)


def check_key(ctx: Context) -> Result:
    name = "key"
    if ctx.key_error is not None:
        return failed(name, ctx.key_error, "run as root or as the service user (sudo soca-diag); "
                      "install.sh --key-file FILE writes the key with the right mode")
    if ctx.env.get(config.KEY_ENV):
        return passed(name, f"read from {config.KEY_ENV} (environment); not shown")
    path = Path(ctx.cfg.private_key_file)
    info = path.stat()
    owner = _user_name(info.st_uid)
    detail = f"{path}: mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}; not shown"
    try:
        service_uid = pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        service_uid = None
    if service_uid is not None and info.st_uid != service_uid:
        return warned(name, detail + f"; the service runs as {SERVICE_USER} and cannot read it",
                      f"chown {SERVICE_USER}:{SERVICE_USER} {path}")
    return passed(name, detail, path=str(path), mode=f"{stat.S_IMODE(info.st_mode):04o}",
                  owner=owner)



def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
