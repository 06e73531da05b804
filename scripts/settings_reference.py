"""Writes docs/reference/settings.md from the config fields (their one home)."""
from pathlib import Path

from ddp_kbit.cli import settings_reference
from ddp_kbit.config import BrokerJob, JobConfig, PublishJob

OUT = Path(__file__).resolve().parents[1] / "docs" / "reference" / "settings.md"

if __name__ == "__main__":
    OUT.write_text(settings_reference([JobConfig, PublishJob, BrokerJob]) + "\n")
    print(OUT)
