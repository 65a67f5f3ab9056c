"""Build hook: ship the top-level rules/ inside the package as eventd/sample_rules/.

rules/ stays the one source of the sample rules (no second copy in the tree to drift); a
wheel, `pip install .` and the container image get a copy made at build time, so that
`eventd demo` works from any install. Subfolders (rules/docker/, rules/tests/) come along.
Everything else is in setup.cfg.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SAMPLE_RULES = Path("rules")
PACKAGED_AS = Path("eventd") / "sample_rules"


class BuildPyWithSampleRules(build_py):
    """build_py, then copy rules/**/*.yaml|yml into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's rules/ directly
        target = Path(self.build_lib) / PACKAGED_AS
        for source in sorted(SAMPLE_RULES.rglob("*")):
            if source.is_file() and source.suffix in (".yaml", ".yml"):
                dest = target / source.relative_to(SAMPLE_RULES)
                self.mkpath(str(dest.parent))
                self.copy_file(str(source), str(dest))


setup(cmdclass={"build_py": BuildPyWithSampleRules})
