# Image for the web and worker services of docker-compose.yml: the runtime packages of uv.lock, exactly.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_NO_CACHE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app
# The uv pinned in pyproject.toml's dev dependencies.
RUN pip install --no-cache-dir uv==0.13.8
# Dependencies first, so this layer survives code changes; --locked: uv.lock must match pyproject.toml.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-install-project
COPY . .
RUN uv sync --locked --no-editable
RUN SECRET_KEY=build-only PROMETHEUS_MULTIPROC_DIR= python manage.py collectstatic --noinput -v 0
EXPOSE 8083
