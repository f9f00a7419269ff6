"""The one rule for names that become folder, file and Slurm job names: experiments, runs,
datasets and site profiles. A name that passes it is safe in a path and in a shell word, so no
value from an experiment or a profile can reach a shell as anything but text."""

import re

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
