"""On-demand prices of a few common instance types, for ``deepgrid cluster plan``'s cost per hour.

A small table, not a price service: Linux on-demand USD per hour as listed on
aws.amazon.com/ec2/pricing/on-demand on PRICES_DATE. Prices change and vary by region; a type or
region not listed is "price unknown" rather than a guess. Spot instances cost less, by a varying
amount: the on-demand price is their upper bound.
"""

from __future__ import annotations

PRICES_DATE = "2025-01-15"

_US = {
    "t3.medium": 0.0416, "t3.large": 0.0832, "t3.xlarge": 0.1664,
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m5.4xlarge": 0.768,
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34, "c5.4xlarge": 0.68,
    "r5.large": 0.126, "r5.xlarge": 0.252,
    "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g5.xlarge": 1.006, "p3.2xlarge": 3.06,
}
# USD per hour by region, then instance type.
ON_DEMAND_USD_PER_HOUR: dict[str, dict[str, float]] = {
    "us-east-1": _US,
    "us-east-2": _US,
    "us-west-2": _US,
    "eu-west-1": {
        "t3.medium": 0.0456, "t3.large": 0.0912, "t3.xlarge": 0.1824,
        "m5.large": 0.107, "m5.xlarge": 0.214, "m5.2xlarge": 0.428, "m5.4xlarge": 0.856,
        "c5.large": 0.096, "c5.xlarge": 0.192, "c5.2xlarge": 0.384, "c5.4xlarge": 0.768,
        "r5.large": 0.141, "r5.xlarge": 0.282,
        "g4dn.xlarge": 0.587, "g4dn.2xlarge": 0.838, "g5.xlarge": 1.123, "p3.2xlarge": 3.305,
    },
    "eu-central-1": {
        "t3.medium": 0.048, "t3.large": 0.096, "t3.xlarge": 0.192,
        "m5.large": 0.115, "m5.xlarge": 0.23, "m5.2xlarge": 0.46, "m5.4xlarge": 0.92,
        "c5.large": 0.097, "c5.xlarge": 0.194, "c5.2xlarge": 0.388, "c5.4xlarge": 0.776,
        "r5.large": 0.152, "r5.xlarge": 0.304,
        "g4dn.xlarge": 0.658, "g4dn.2xlarge": 0.94, "g5.xlarge": 1.258, "p3.2xlarge": 3.823,
    },
}


def hourly_price(region: str, instance_type: str) -> float | None:
    """On-demand USD per hour, or None when the table does not list the region or the type."""
    return ON_DEMAND_USD_PER_HOUR.get(region, {}).get(instance_type)
