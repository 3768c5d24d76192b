"""Ships the one catalog, models.toml at the top of the repository, inside the `serve` package.

Everything else about the build is in pyproject.toml. A symbolic link from serve/ to the catalog broke
wherever the link's target was not copied along (the CUDA image's build stage), and a wheel built that way
came out without its catalog, silently. Instead, the build copies the real file into the package, and
fails loudly when it is missing. An editable install runs from the checkout and reads the top-level file
itself (serve/models/catalog.py), so an edited catalog takes effect without reinstalling.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

CATALOG = "models.toml"


class BuildPyWithCatalog(build_py):
    """build_py that also puts the top-level models.toml into the built `serve` package."""

    def _catalog_target(self) -> str:
        return str(Path(self.build_lib, "serve", CATALOG))

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # build_py copies nothing in this mode; the checkout is used in place
            return
        if not Path(CATALOG).is_file():
            raise FileError(f"{CATALOG} (the model catalog) is missing from the source tree: "
                            "the package would ship without it. Copy it along with pyproject.toml.")
        self.mkpath(str(Path(self._catalog_target()).parent))
        self.copy_file(CATALOG, self._catalog_target())

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, self._catalog_target()]

    def get_output_mapping(self) -> dict[str, str]:
        # editable installs in strict mode link these files into their tree
        return {**super().get_output_mapping(), self._catalog_target(): CATALOG}


setup(cmdclass={"build_py": BuildPyWithCatalog})
