print("Hello from tower-host")
