import arithmetic
import greetings

print(greetings.greet("import paths"))
print(f"lib_b: 2 + 3 = {arithmetic.add(2, 3)}")
