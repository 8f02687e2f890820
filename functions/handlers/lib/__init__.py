"""The parts function modules are built from (Pillow, WeasyPrint, SMTP, COPY, multipart uploads).

Kept apart from the function modules themselves: the registry imports every module directly
under functions/handlers/, and these may load heavy libraries that only the machines running
them should pay for.
"""
