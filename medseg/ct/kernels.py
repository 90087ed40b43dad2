"""Reconstruction-kernel names as scanners write them, qualified by vendor where names collide.

A kernel is whatever a scanner writes in ConvolutionKernel (0018,1210): Siemens ``B30f``,
``Br40``, ``Qr40``, ``Bl57``; Philips ``B``, ``C``, ``D``, ``L``, ``UB``, ``YA``; GE
``STANDARD``, ``LUNG``, ``BONE``, ``SOFT``; Canon/Toshiba ``FC13``, ``FC51``; … Names are
compared case-insensitively; the one spelling rule kept from the Siemens-only days is that a
classic Siemens name gets its case and its default ``f`` suffix (``b50f``, ``B50`` -> ``B50f``).

A name may carry its vendor: ``Philips:B``; otherwise ``--vendor`` (or the input's Manufacturer
tag, only to choose between weights of several vendors) says which vendor's ``B`` is meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medseg.errors import InputError

# Manufacturer (0008,0070) as scanners write it -> one short vendor name; matched on the start of
# the lower-cased tag. Toshiba became Canon Medical: one kernel family.
VENDOR_PREFIXES = (
    ("siemens", "Siemens"),
    ("philips", "Philips"),
    ("ge ", "GE"),
    ("ge_", "GE"),
    ("gems", "GE"),
    ("general electric", "GE"),
    ("ge medical", "GE"),
    ("ge healthcare", "GE"),
    ("toshiba", "Canon"),
    ("canon", "Canon"),
    ("hitachi", "Fujifilm"),
    ("fujifilm", "Fujifilm"),
    ("united imaging", "UIH"),
    ("uih", "UIH"),
    ("neusoft", "Neusoft"),
)
_SIEMENS_CLASSIC = re.compile(r"^([A-Za-z])(\d{2})([A-Za-z]?)$")  # B30f, b50, H31s, I26f


def vendor_name(manufacturer: str | None) -> str | None:
    """'SIEMENS' / 'Siemens Healthineers' -> 'Siemens', 'GE MEDICAL SYSTEMS' -> 'GE', '' -> None.

    Unknown manufacturers keep their own (stripped) name: the vendor is only a namespace.
    """
    text = " ".join(str(manufacturer or "").split())
    if not text:
        return None
    low = text.lower()
    if low == "ge":
        return "GE"
    for prefix, name in VENDOR_PREFIXES:
        if low.startswith(prefix):
            return name
    return text


def normalise_kernel(name: str, vendor: str | None = None) -> str:
    """One spelling per kernel: whitespace stripped and collapsed; classic Siemens names (any vendor
    not stated otherwise) as ``B50f`` (``b50f``, ``B50`` -> ``B50f``); an all-lower-case name in upper
    case (``ub`` -> ``UB``, ``standard`` -> ``STANDARD``); anything else as written."""
    text = " ".join(str(name).split())
    match = _SIEMENS_CLASSIC.match(text)
    if match and vendor in (None, "Siemens"):
        letter, digits, suffix = match.groups()
        return f"{letter.upper()}{digits}{(suffix or 'f').lower()}"
    return text.upper() if text == text.lower() else text


def kernel_key(name: str, vendor: str | None = None) -> str:
    """What two kernel names are compared by (case-insensitive after normalisation)."""
    return normalise_kernel(name, vendor).casefold()


def siemens_family(name: str) -> str | None:
    """'Br50f', 'B50f', 'B50s' -> 'B50' (letter and sharpness number); None for other names."""
    match = re.match(r"^([A-Za-z])[a-z]?(\d{2})[A-Za-z]?$", name.strip())
    return f"{match.group(1).upper()}{match.group(2)}" if match else None


@dataclass(frozen=True)
class KernelSpec:
    """A kernel as the user names it: ``name`` and, when stated, the scanner ``vendor``."""

    name: str
    vendor: str | None = None

    @property
    def key(self) -> str:
        return kernel_key(self.name, self.vendor)

    def __str__(self) -> str:
        return f"{self.vendor}:{self.name}" if self.vendor else self.name

    def matches(self, name: str, vendor: str | None) -> bool:
        """Same kernel name, and the same vendor when both sides state one."""
        if kernel_key(name, vendor) != self.key:
            return False
        return self.vendor is None or vendor is None or self.vendor == vendor


def parse_kernel(text: str, *, vendor: str | None = None, option: str = "--from/--to") -> KernelSpec:
    """``'B50f'``, ``'b50'``, ``'Philips:UB'``, ``'GE:STANDARD'`` -> :class:`KernelSpec`.

    ``vendor`` (``--vendor``) applies when the name does not carry its own; a name's own vendor
    must not contradict it. Empty names are an input error (exit 2).
    """
    raw = str(text).strip()
    own_vendor = None
    if ":" in raw:
        head, tail = raw.split(":", 1)
        own_vendor, raw = vendor_name(head), tail.strip()
    stated = vendor_name(vendor) if vendor else None
    if own_vendor and stated and own_vendor != stated:
        raise InputError(f"{option} '{text}' names vendor {own_vendor} but --vendor is {stated}")
    if not raw:
        raise InputError(f"{option}: empty kernel name '{text}'")
    chosen = own_vendor or stated
    return KernelSpec(normalise_kernel(raw, chosen), chosen)


def kernel_values(value) -> list[str]:
    """ConvolutionKernel as a list of its non-empty values (the tag may be multi-valued)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue":
        values = [str(v).strip() for v in value]
    else:
        values = [v.strip() for v in str(value).split("\\")]
    return [v for v in values if v]


def tag_kernel_names(values: list[str]) -> list[str]:
    """The values of a ConvolutionKernel tag that name a kernel: Siemens appends the iterative
    strength as a number (``['Br40d', '3']``), which is not a kernel."""
    return [v for v in values if not re.fullmatch(r"[\d.]+", v)]


def tag_agrees(values: list[str], spec: KernelSpec, vendor: str | None) -> bool:
    """Does the input's ConvolutionKernel tag agree with ``--from``? Any named value may match; for
    Siemens names the sharpness family is enough (``Br50f`` vs ``B50f``)."""
    for value in tag_kernel_names(values):
        if spec.matches(value, vendor):
            return True
        family = siemens_family(value)
        if family and family == siemens_family(spec.name) and vendor in (None, "Siemens"):
            return True
    return False


def kernel_tag_warnings(series, spec: KernelSpec) -> list[str]:
    """What the input's ConvolutionKernel and Manufacturer tags say against --from (and --vendor):
    an empty tag, several kernel names in one tag or across slices, another kernel, another vendor."""
    values = list(series.kernel_values)
    names = tag_kernel_names(values)
    vendor = vendor_name(series.manufacturer)
    warnings = []
    if not names:
        warnings.append(f"input has no ConvolutionKernel tag; taking --from {spec.name} on trust")
    elif len(names) > 1:
        warnings.append(f"input ConvolutionKernel has several values {names}; --from is {spec.name}")
    if names and not tag_agrees(values, spec, vendor if spec.vendor is None else spec.vendor):
        shown = "\\".join(values)
        warnings.append(f"input ConvolutionKernel is '{shown}' but --from is {spec.name}")
    if spec.vendor and vendor and vendor != spec.vendor:
        warnings.append(
            f"input Manufacturer is '{series.manufacturer}' ({vendor}) but the kernels are {spec.vendor}'s"
        )
    return warnings
