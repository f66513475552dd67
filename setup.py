"""Builds the C++ counting core, igot._core (pybind11, C++17, -O3, std::thread)."""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "igot._core",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", "-pthread"],
        extra_link_args=["-pthread"],  # std::thread needs it on glibc < 2.34
        define_macros=[("VERSION_INFO", '"0.1.0"')],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
