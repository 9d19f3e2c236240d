"""The objects of the S3 crash test: content is a function of the key, so a verifier can
check any object; every fourth object is big enough to be uploaded in two parts."""

MiB = 1 << 20


def is_multipart(i):
    return i % 4 == 3


def content(i):
    size = 5 * MiB + (i * 37_123) % MiB if is_multipart(i) else 1000 + (i * 37_123) % 2_500_000
    pattern = f"object-{i}:".encode()
    return (pattern * (size // len(pattern) + 1))[:size]
