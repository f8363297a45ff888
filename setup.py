"""soca-appliance: the software of a Raspberry Pi smart speaker for Soca AI's Voice Stream."""
from setuptools import find_packages, setup

setup(
    name="soca-appliance",
    version="0.1.0",
    description="Raspberry Pi voice appliance for Soca AI's Voice Stream WebSocket",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_dir={"": "device"},
    packages=find_packages("device"),
    package_data={"soca_appliance": ["assets/*.mp3", "assets/*.wav", "assets/*.json"],
                  "soca_appliance.web": ["static/*.html", "static/*.css", "static/*.js"]},
    install_requires=[
        "pyaudio>=0.2.13",
        "websocket-client>=1.7",
        "numpy>=1.24",
        "webrtcvad-wheels>=2.0.11",
        "gpiozero>=2.0",
        "pygame>=2.5",
        "soxr>=0.3",
        "websockets>=12",
        "prometheus_client>=0.17",
        # WebRTC AEC3 for voice barge-in (echo.py). No wheel for 32-bit ARM: there the
        # appliance says so and runs half duplex.
        "pywebrtc-audio>=0.2; platform_machine != 'armv7l' and platform_machine != 'armv6l'",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "selenium>=4.10"],
        "assets": ["lameenc>=1.5"],
    },
    entry_points={
        "console_scripts": [
            "soca-appliance=soca_appliance.cli:main",
            "soca-diag=soca_appliance.diagnostics:main",
        ],
    },
)
