"""``vicap-jobs config``: the effective settings.

Every setting of ``Settings.public_view`` and nothing else: object storage credentials are not
settings (the storage library reads the standard AWS variables, profiles, instance roles), so
none of them is printed; a URL typed with inline credentials (``s3://KEY:SECRET@bucket``) is shown
with the secret as ``***``.
"""

from __future__ import annotations

import click

from vicap_jobs.cli.common import print_table
from vicap_jobs.settings import get_settings
from vicap_jobs.storage.redact import redact


@click.command()
def config() -> None:
    """Print the effective settings (from VICAP_* environment variables; passwords hidden).

    Object storage credentials are not vicap-jobs settings: they come from the
    storage library's usual places (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL, profiles, instance roles) and are never printed.

    Example:

    \b
        VICAP_HOME=/data/vicap vicap-jobs config
        VICAP_ARTIFACTS_URL=s3://vicap/artifacts vicap-jobs config
    """
    rows = [(name, redact(value)) for name, value in get_settings().public_view().items()]
    print_table("vicap-jobs settings", ["variable", "value"], rows)
