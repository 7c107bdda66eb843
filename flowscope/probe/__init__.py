"""The only package that imports bcc and pyroute2: compile, attach, read the kernel maps."""
