# Builds a set-up-only interface stand-in from a folder of ROS interface definitions that lies
# outside this repository (VGGT4D_INTERFACE_DIR, e.g. ../shared/ros-wheels/interfaces/bond): every
# msg/*.msg, srv/*.srv and action/*.action there is generated with rosidl_generate_interfaces, as
# "<dir>:<relative path>" tuples (rosidl's form for files outside the source directory).
#
#   include(../cmake/standin_interfaces.cmake)
#   standin_generate_interfaces(DEPENDENCIES std_msgs builtin_interfaces)
macro(standin_generate_interfaces)
  cmake_parse_arguments(_standin "" "" "DEPENDENCIES" ${ARGN})
  if(NOT VGGT4D_INTERFACE_DIR)
    message(FATAL_ERROR "pass -DVGGT4D_INTERFACE_DIR=<folder holding msg/ srv/ action/ of ${PROJECT_NAME}>")
  endif()
  get_filename_component(_standin_dir "${VGGT4D_INTERFACE_DIR}" ABSOLUTE)
  file(GLOB _standin_files RELATIVE "${_standin_dir}"
    "${_standin_dir}/msg/*.msg" "${_standin_dir}/srv/*.srv" "${_standin_dir}/action/*.action")
  if(NOT _standin_files)
    message(FATAL_ERROR "no interface definitions found in ${_standin_dir}")
  endif()
  list(SORT _standin_files)
  set(_standin_tuples "")
  foreach(_f IN LISTS _standin_files)
    list(APPEND _standin_tuples "${_standin_dir}:${_f}")
  endforeach()
  rosidl_generate_interfaces(${PROJECT_NAME} ${_standin_tuples} DEPENDENCIES ${_standin_DEPENDENCIES})
endmacro()
