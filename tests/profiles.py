"""The hypothesis profiles (registered by tests/conftest.py) and the example budget of tests that
set their own.

* ``ci``: deterministic (derandomized, no example database). CI replays the same examples on
  every run, so a red CI is reproducible and never a draw of luck. `.ci/run` selects it by
  name (``QUANTUM_HYPOTHESIS_PROFILE=ci``): it does not rely on the runner setting ``CI``,
  which a plain `.ci/run` does not. ``CI`` set by a hosted runner selects it too.
* ``dev``: the default elsewhere: random examples, remembered in ``.hypothesis/``, so each
  local run explores new inputs and replays the failures it found before.
* ``explore``: a long search, by hand (docs/TESTING.md):
  ``pytest --hypothesis-profile=explore -m "not etcd"``, ten times the examples
  of every property; pin whatever it finds with ``@example``.

A test that sets `max_examples` itself (a slow property) sets `max_examples=scaled(n)`: n under
``ci`` and ``dev``, ten times n under ``explore``.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, Phase, settings

#: the environment variable naming the profile (`.ci/run` sets it to ``ci``)
PROFILE_VARIABLE = "QUANTUM_HYPOTHESIS_PROFILE"

#: the examples of a property with no budget of its own, under ci and dev
BASE_EXAMPLES = 100

# Each profile starts from hypothesis' own defaults, not from `settings.default`: hypothesis
# loads its built-in CI profile (derandomized, no database) at import when it sees any of a
# dozen CI variables (GITHUB_ACTIONS, TF_BUILD, ...), and a profile registered on top of that
# would inherit it, making `dev` and `explore` replay the same examples for ever.
_HYPOTHESIS_DEFAULTS = settings.get_profile("default")

settings.register_profile("ci", _HYPOTHESIS_DEFAULTS, max_examples=BASE_EXAMPLES,
                          derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", _HYPOTHESIS_DEFAULTS, max_examples=BASE_EXAMPLES,
                          deadline=None)
settings.register_profile("explore", _HYPOTHESIS_DEFAULTS, max_examples=10 * BASE_EXAMPLES,
                          deadline=None, phases=list(Phase),
                          suppress_health_check=[HealthCheck.too_slow])


def default_profile(environ: Mapping[str, str]) -> str:
    """The profile a run loads unless ``--hypothesis-profile`` names one: the one
    ``QUANTUM_HYPOTHESIS_PROFILE`` names, else ``ci`` under a CI runner (``CI`` set and not
    "false"/"0"), else ``dev``."""
    if named := environ.get(PROFILE_VARIABLE):
        return named
    if environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return "ci"
    return "dev"


def scaled(examples: int) -> int:
    """A property's own example budget, scaled like the loaded profile's (read when the test
    module is imported, after `--hypothesis-profile` took effect)."""
    return max(1, examples * settings.default.max_examples // BASE_EXAMPLES)
