"""Admission by client address for gale, in Python (world `admission`).

Settings (all optional):

  reject          addresses or networks to refuse (192.0.2.7,
                  198.51.100.0/24, 2001:db8:1:2::/64), separated by spaces
                  or commas: an IPv6 host is handed a /64 and can move
                  within it, so list its /64 to keep it out
  reject_code     the refusal's code (default 554)
  reject_text     its text (default "5.7.1 Access denied by policy")
  tarpit          addresses or networks to hold before they may go on
  tarpit_seconds  how long (default 5; gale holds at most 60)
  max_client_sessions
                  refuse a client that has this many sessions open already
                  with 421 4.7.0 (default 0: no limit)

Every other client is accepted.
"""

import ipaddress
from typing import List, Tuple, Union

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.admitter import (
    AdmissionContext,
    Decision,
    Decision_Accept,
    Decision_Reject,
    Decision_Tarpit,
    Rejection,
)
from wit_world.imports import host
from wit_world.imports.types import IpAddress_V4


Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Policy:
    """The plugin's state, in one module-level object: componentize-py
    makes a new `Admitter` for every call into the component."""

    def __init__(self) -> None:
        self.reject: List[Network] = []
        self.reject_code = 554
        self.reject_text = "5.7.1 Access denied by policy"
        self.tarpit: List[Network] = []
        self.tarpit_seconds = 5
        self.max_client_sessions = 0


POLICY = Policy()

KEYS = ("reject", "reject_code", "reject_text", "tarpit", "tarpit_seconds",
        "max_client_sessions")


def addresses(key: str, value: str) -> List["Network"]:
    out = []
    for word in value.replace(",", " ").split():
        try:
            # An address alone is a /32 or /128.
            out.append(ipaddress.ip_network(word))
        except ValueError:
            raise Err(f"setting `{key}`: `{word}` is not an IP address or network"
                      " (host bits set?)")
    return out


def listed(ip: "Address", networks: List["Network"]) -> bool:
    return any(ip in net for net in networks)


# What each number may be: a value the contract cannot carry (a negative
# or 2**32 seconds) would trap at the boundary, and a code outside 4xx/5xx
# is refused by gale; both would admit every client (gale's fallback), so
# they are refused here, at load.
RANGES = {
    "reject_code": (400, 599),
    "tarpit_seconds": (0, 2**32 - 1),
    "max_client_sessions": (0, 2**32 - 1),
}


def number(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise Err(f"setting `{key}`: `{value}` is not a number")
    low, high = RANGES.get(key, (0, 2**32 - 1))
    if not low <= n <= high:
        raise Err(f"setting `{key}`: {n} is not from {low} to {high}")
    return n


def client(ctx: AdmissionContext) -> "Address":
    ip = ctx.client_ip
    if isinstance(ip, IpAddress_V4):
        return ipaddress.IPv4Address(ip.value)
    hi, lo = ip.value
    return ipaddress.IPv6Address((hi << 64) | lo)


class Admitter(exports.Admitter):
    def init(self, settings: List[Tuple[str, str]]) -> None:
        for key, value in settings:
            if key not in KEYS:
                raise Err(f"unknown setting `{key}`")
            if key in ("reject", "tarpit"):
                setattr(POLICY, key, addresses(key, value))
            elif key == "reject_text":
                POLICY.reject_text = value
            else:
                setattr(POLICY, key, number(key, value))
        host.log(host.Level.INFO, "admission-python ready",
                 [("reject", str(len(POLICY.reject))),
                  ("tarpit", str(len(POLICY.tarpit)))])

    def admit(self, ctx: AdmissionContext) -> Decision:
        who = client(ctx)
        if listed(who, POLICY.reject):
            return Decision_Reject(Rejection(POLICY.reject_code, POLICY.reject_text))
        limit = POLICY.max_client_sessions
        if limit and ctx.client_sessions >= limit:
            return Decision_Reject(Rejection(421, "4.7.0 Too many sessions from your address"))
        if listed(who, POLICY.tarpit):
            return Decision_Tarpit(POLICY.tarpit_seconds)
        return Decision_Accept()
