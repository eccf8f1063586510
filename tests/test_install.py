"""The requirements install where users are: each platform gets the TensorFlow that has wheels
for it (benchmarks/install_platforms.py asks the package index), and pyproject.toml names the
same packages as requirements.txt (its `datasets` extra included)."""

import importlib.util
import re
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import REPO

spec = importlib.util.spec_from_file_location('install_platforms',
                                              REPO / 'benchmarks' / 'install_platforms.py')
install_platforms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_platforms)


def names(lines) -> set[str]:
    return {re.sub(r'[-_.]+', '-', Requirement(line).name.lower()) for line in lines}


@pytest.mark.parametrize('platform, tensorflow', [('Linux x86-64', 'tensorflow-cpu'),
                                                  ('Linux aarch64', 'tensorflow'),
                                                  ('macOS arm64', 'tensorflow')])
@pytest.mark.parametrize('python', ['3.11', '3.12', '3.13'])
def test_each_platform_gets_one_tensorflow_with_wheels_for_it(platform, tensorflow, python):
    environment = {**install_platforms.PLATFORMS[platform][1], 'python_version': python}
    required = names(install_platforms.requirements_for(str(REPO / 'requirements.txt'),
                                                        environment))
    assert required & {'tensorflow', 'tensorflow-cpu'} == {tensorflow}
    with open(REPO / 'pyproject.toml', 'rb') as file:
        project = tomllib.load(file)['project']
    dependencies = project['dependencies'] + project['optional-dependencies']['datasets']
    declared = {re.sub(r'[-_.]+', '-', r.name.lower()) for r in map(Requirement, dependencies)
                if r.marker is None or r.marker.evaluate(environment)}
    assert declared == required, declared ^ required
