# Only what pyproject.toml cannot say: ship hwbridge.pth at the root of site-packages, so
# pyserial learns hwbridge:// URLs in every program (see _hwbridge_serial_hook.py).
from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file("hwbridge.pth", os.path.join(self.build_lib, "hwbridge.pth"))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode),
                os.path.join(self.build_lib, "hwbridge.pth")]


setup(cmdclass={"build_py": BuildWithPth})
