"""Object names that become label values, and the rules that keep them short enough.

A label value is at most 63 characters, `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`. A
CloudProvider's name is the value of gpufleet.io/provider on its nodes and burst copies, a
node pool's name that of gpufleet.io/node-pool, and a ServingPool's `<namespace>.<name>`
that of gpufleet.io/pool on its burst copies. A name the API server admits (up to 253
characters) but no label can carry would be refused only when gpufleet first writes the
label: on the first burst, long after the tenant has gone.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gpufleet.api.common import SHORT_MAX, cel
from gpufleet.api.labels import POOL_LABEL, PROVIDER_LABEL

LABEL_VALUE_MAX = SHORT_MAX
# A namespace name is a DNS label of at least one character, and the pool label joins the
# two with a dot: 63 - 1 - 1 is the longest pool name that fits in some namespace.
POOL_NAME_MAX = LABEL_VALUE_MAX - 2

# An object name of the API's shape (lowercase DNS subdomain) that also fits a label value.
LabelValueName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=LABEL_VALUE_MAX,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    ),
]

# Root-level CEL sees only `metadata.name` and `metadata.generateName` of the metadata, not
# `metadata.namespace`. So the pool's rule is the bound that holds in every namespace (a
# name of 62 or 63 fits none), and the part that depends on the namespace is checked when
# the pool is parsed (`name_errors`), as SpecValid=False naming `metadata.name`. A
# ValidatingAdmissionPolicy could see the namespace, but not every cluster runs one for us.
# Hashing the long names into the label instead would keep every name usable, but the label
# is read back (reconcilers/burst/remote.py) and selected on by people: a name that says
# which pool a copy serves is worth a refusal at creation. The shape needs no rule: the
# API server admits only DNS subdomains as names, which are label-shaped once short enough.
POOL_RULES = (
    cel(
        f"self.metadata.name.size() <= {POOL_NAME_MAX}",
        f"`metadata.name` must be at most {POOL_NAME_MAX} characters: `<namespace>.<name>` "
        f"is the value of label {POOL_LABEL}, at most {LABEL_VALUE_MAX}",
    ),
)
PROVIDER_RULES = (
    cel(
        f"self.metadata.name.size() <= {LABEL_VALUE_MAX}",
        f"`metadata.name` must be at most {LABEL_VALUE_MAX} characters: it is the value of "
        f"label {PROVIDER_LABEL}",
    ),
)


def pool_name_errors(namespace: str | None, name: str) -> tuple[str, ...]:
    """What is wrong with a ServingPool's name as the pool label's value; empty if nothing.
    A name too long for any namespace gets its CEL rule's message (as the API server would
    have said); one too long for its own namespace, the bound the rule cannot see."""
    if len(name) > POOL_NAME_MAX:
        return (POOL_RULES[0]["message"],)
    if namespace and len(namespace) + 1 + len(name) > LABEL_VALUE_MAX:
        room = LABEL_VALUE_MAX - len(namespace) - 1
        label = (
            f"`<namespace>.<name>` is the value of label {POOL_LABEL}, at most {LABEL_VALUE_MAX}"
        )
        if room < 1:
            return (
                f"`metadata.name` cannot fit beside namespace {namespace}: {label}; create "
                f"the pool in a namespace of at most {LABEL_VALUE_MAX - 2} characters",
            )
        return (
            f"`metadata.name` must be at most {room} characters in namespace {namespace}: "
            f"{label}; recreate the pool under a shorter name",
        )
    return ()


def provider_name_errors(name: str) -> tuple[str, ...]:
    """What is wrong with a CloudProvider's name as the provider label's value."""
    if len(name) > LABEL_VALUE_MAX:
        return (PROVIDER_RULES[0]["message"],)
    return ()
