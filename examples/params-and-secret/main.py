import os
import sys

PARAMETER_NAMES = ["GREETING", "TARGET"]


def main() -> int:
    for name in PARAMETER_NAMES:
        print(f"{name}={os.environ.get(name, '<not set>')}")

    # Only the length is printed, because run logs must never contain a secret value.
    token = os.environ.get("API_TOKEN")
    if token is None:
        print("error: the secret API_TOKEN is not set; add it to the run's secrets", file=sys.stderr)
        return 1
    print(f"API_TOKEN length={len(token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
