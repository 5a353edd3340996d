# Coverage-guided fuzz harnesses (atheris): `make fuzz-atheris`. Each module exposes
# TestOneInput(bytes) and runs under atheris when executed; tests import them to run the same
# function over generated inputs without atheris.
