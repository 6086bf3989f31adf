from tabulate import tabulate

rows = [["apples", 3], ["pears", 12]]
print(tabulate(rows, headers=["fruit", "count"], tablefmt="github"))
