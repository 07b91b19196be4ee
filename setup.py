from setuptools import find_packages, setup


def version() -> str:
    scope: dict = {}
    with open('mmifso/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmifso',
    version=version(),
    description='Influence-function global channel pruning (IFSO) for '
    'OpenMMLab: mmpretrain classifiers and mmdet detectors',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tools', 'configs')),
    python_requires='>=3.8',
    install_requires=[
        'torch>=2.0,<2.2', 'mmengine>=0.10,<1.0', 'mmcv>=2.0,<2.2',
        'mmpretrain>=1.0,<1.3', 'mmdet>=3.1,<3.4', 'torch-pruning>=1.6,<1.7',
        'numpy<2', 'scikit-learn', 'matplotlib'
    ],
    license='Apache License 2.0',
    zip_safe=False)
