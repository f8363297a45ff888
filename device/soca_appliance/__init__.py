"""soca-appliance: a Raspberry Pi smart speaker speaking Soca AI's Voice Stream protocol."""

__version__ = "0.1.0"
