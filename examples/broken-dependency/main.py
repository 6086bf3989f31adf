print("error: this line runs only if dependency installation did not fail")
