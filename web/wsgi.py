"""What gunicorn serves (`web.wsgi:app`): the dashboard, sampling memory as it runs."""

from web import create_app

app = create_app(test_config={"SAMPLE_MEMORY": True})
