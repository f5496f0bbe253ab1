from service.main import run

run()
