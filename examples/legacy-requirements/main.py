import six

print(f"six {six.__version__} is installed")
print(six.ensure_str(b"bytes decoded by six"))
